-- model: preference_pairs
-- blocking: true
-- Every chosen path is correct and every rejected path is not.
SELECT p.pairing, p.problem_id
FROM preference_pairs AS p
JOIN tree_paths AS c ON c.path_id = p.chosen_path_id
JOIN tree_paths AS r ON r.path_id = p.rejected_path_id
WHERE NOT c.correct OR r.correct
