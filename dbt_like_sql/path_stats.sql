-- Per problem: how many paths the search found, how many correct, wrong and without an
-- answer, and the token lengths of its correct paths.
-- batch_by: problem_id
SELECT
    problem_id,
    count(*) AS paths,
    count(*) FILTER (WHERE correct) AS correct_paths,
    count(*) FILTER (WHERE NOT correct AND NOT no_answer) AS wrong_paths,
    count(*) FILTER (WHERE no_answer) AS no_answer_paths,
    min(tokens) FILTER (WHERE correct) AS min_correct_tokens,
    max(tokens) FILTER (WHERE correct) AS max_correct_tokens,
    avg(depth) AS mean_depth
FROM tree_paths
GROUP BY problem_id
ORDER BY problem_id
