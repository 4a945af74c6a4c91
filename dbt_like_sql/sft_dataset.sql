-- The SFT set (Thoughts Length Balance): the longest correct path of each train problem by
-- default ($sft_selection = 'longest'; 'shortest' and 'all_correct' for the ablation), in
-- TRL's conversational `messages` column (user = task prompt with the problem, assistant =
-- the path's tagged thoughts), with provenance: problem, tree and node ids.
WITH ranked AS (
    SELECT t.*,
           row_number() OVER (PARTITION BY t.problem_id
                              ORDER BY CASE WHEN $sft_selection = 'shortest' THEN t.tokens ELSE -t.tokens END, t.path_id) AS pick_rank
    FROM tree_paths AS t
    WHERE t.correct
)
SELECT
    r.problem_id,
    r.tree_id,
    r.path_id,
    r.node_ids,
    [{'role': 'user', 'content': s.prompt}, {'role': 'assistant', 'content': r.path_text}] AS messages,
    r.tokens,
    r.depth,
    $sft_selection AS selection
FROM ranked AS r
JOIN stg_problems AS s ON s.problem_id = r.problem_id
WHERE s.split = 'train'
  AND ($sft_selection = 'all_correct' OR r.pick_rank = 1)
ORDER BY r.problem_id, r.path_id
