-- Thoughts Length Balance, measured: the shortest, median and longest correct path of each
-- problem in student tokens (the paper's Figure 3), with the problem's domain.
-- batch_by: problem_id
SELECT
    t.problem_id,
    s.domain,
    count(*) AS correct_paths,
    min(t.tokens) AS shortest_tokens,
    median(t.tokens) AS median_tokens,
    max(t.tokens) AS longest_tokens
FROM tree_paths AS t
JOIN stg_problems AS s ON s.problem_id = t.problem_id
WHERE t.correct
GROUP BY t.problem_id, s.domain
ORDER BY t.problem_id
