-- model: sft_dataset
-- blocking: true
-- Every SFT row is a correct path.
SELECT s.problem_id, s.path_id
FROM sft_dataset AS s
LEFT JOIN tree_paths AS t ON t.path_id = s.path_id
WHERE t.path_id IS NULL OR NOT t.correct
