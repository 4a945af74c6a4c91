-- The SFT set (Thoughts Length Balance): the longest correct path of each train problem by
-- default ($sft_selection = 'longest'; 'shortest' and 'all_correct' for the ablation), in
-- TRL's conversational `messages` column (user = task prompt with the problem, assistant =
-- the path's tagged thoughts), with provenance: problem, tree and node ids.
-- batch_by: problem_id
WITH picked AS (
    -- ranks on ids and lengths only; texts are joined for the picked paths alone
    SELECT path_id
    FROM (SELECT path_id,
                 row_number() OVER (PARTITION BY problem_id
                                    ORDER BY CASE WHEN $sft_selection = 'shortest' THEN tokens ELSE -tokens END, path_id) AS pick_rank
          FROM tree_paths
          WHERE correct)
    WHERE $sft_selection = 'all_correct' OR pick_rank = 1
)
SELECT
    t.problem_id,
    t.tree_id,
    t.path_id,
    t.node_ids,
    [{'role': 'user', 'content': s.prompt}, {'role': 'assistant', 'content': t.path_text}] AS messages,
    t.tokens,
    t.depth,
    $sft_selection AS selection
FROM picked AS p
JOIN tree_paths AS t ON t.path_id = p.path_id
JOIN stg_problems AS s ON s.problem_id = t.problem_id
WHERE s.split = 'train'
ORDER BY t.problem_id, t.path_id
