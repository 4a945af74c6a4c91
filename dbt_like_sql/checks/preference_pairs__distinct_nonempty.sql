-- model: preference_pairs
-- blocking: true
-- Chosen and rejected responses are both non-empty and differ.
SELECT pairing, problem_id
FROM preference_pairs
WHERE chosen[1].content = rejected[1].content
   OR length(trim(chosen[1].content)) = 0
   OR length(trim(rejected[1].content)) = 0
