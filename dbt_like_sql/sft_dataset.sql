-- The SFT set (Thoughts Length Balance): the longest correct path of each train problem by
-- default ($sft_selection = 'longest'; 'shortest' and 'all_correct' for the ablation), in
-- TRL's conversational `messages` column (user = task prompt with the problem, assistant =
-- the path's tagged thoughts), with provenance: problem, tree and node ids.
WITH ranked AS (
    SELECT t.*,
           row_number() OVER (PARTITION BY t.problem_id ORDER BY t.tokens DESC, t.path_id) AS longest_rank,
           row_number() OVER (PARTITION BY t.problem_id ORDER BY t.tokens ASC, t.path_id) AS shortest_rank
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
  AND CASE $sft_selection
        WHEN 'longest' THEN r.longest_rank = 1
        WHEN 'shortest' THEN r.shortest_rank = 1
        ELSE true
      END
ORDER BY r.problem_id, r.path_id
