-- Preference pairs (SPEC section 2). chosen: the shortest correct path of a problem
-- (pairing = 'balanced', Thoughts Length Balance) or a correct path picked by a content hash,
-- regardless of length (pairing = 'default', for the plain-DPO ablation row). rejected: the
-- incorrect path (wrong or no answer) of the same search tree sharing the shortest common prefix
-- with the chosen one, ties broken by the shortest. The shared prefix is recorded in nodes, tokens and characters.
-- Problems without an incorrect path give no pair. Columns follow TRL: prompt, chosen, rejected.
-- batch_by: problem_id
WITH correct AS (
    -- ids and lengths only: texts are joined once, for the winning pairs
    SELECT problem_id,
           arg_min(path_id, (tokens, path_id)) AS shortest_path_id,
           arg_min(path_id, (md5(path_id), path_id)) AS default_path_id
    FROM tree_paths
    WHERE correct
    GROUP BY problem_id
),
chosen AS (
    SELECT p.pairing, t.problem_id, t.tree_id, t.path_id, t.node_ids, t.node_idx, t.tokens, t.cum_tokens, t.cum_chars
    FROM (SELECT 'balanced' AS pairing, problem_id, shortest_path_id AS path_id FROM correct
          UNION ALL
          SELECT 'default', problem_id, default_path_id FROM correct) AS p
    JOIN tree_paths AS t ON t.path_id = p.path_id
),
wrong AS (
    SELECT tree_id, path_id, node_idx, tokens FROM tree_paths WHERE NOT correct
),
candidates AS (
    -- The rejected path comes from the chosen one's tree. Two root paths of a tree agree on a
    -- prefix and differ at every position after it, so counting equal positions gives the
    -- shared prefix (several times cheaper than a set intersection).
    SELECT c.pairing, c.problem_id, w.path_id, w.tokens,
           CAST(list_sum(list_transform(list_zip(c.node_idx, w.node_idx), lambda p: CAST(p[1] = p[2] AS INTEGER))) AS BIGINT) AS shared
    FROM chosen AS c
    JOIN wrong AS w ON w.tree_id = c.tree_id
),
best AS (
    SELECT pairing, problem_id,
           arg_min(path_id, (shared, tokens, path_id)) AS rejected_path_id,
           min(shared) AS shared_nodes
    FROM candidates
    GROUP BY pairing, problem_id
),
texts AS MATERIALIZED (
    -- one pass over the path texts, for the chosen and rejected paths only
    SELECT path_id, path_text, node_ids, tokens, no_answer FROM tree_paths
    WHERE path_id IN (SELECT path_id FROM chosen UNION SELECT rejected_path_id FROM best)
)
SELECT
    b.pairing,
    b.problem_id,
    c.tree_id,
    [{'role': 'user', 'content': s.prompt}] AS prompt,
    [{'role': 'assistant', 'content': ct.path_text}] AS chosen,
    [{'role': 'assistant', 'content': rt.path_text}] AS rejected,
    c.path_id AS chosen_path_id,
    c.node_ids AS chosen_node_ids,
    b.rejected_path_id,
    rt.node_ids AS rejected_node_ids,
    c.tokens AS chosen_tokens,
    rt.tokens AS rejected_tokens,
    rt.no_answer AS rejected_no_answer,
    b.shared_nodes - 1 AS common_prefix_nodes,
    c.cum_tokens[b.shared_nodes] AS common_prefix_tokens,
    c.cum_chars[b.shared_nodes] AS common_prefix_chars
FROM best AS b
JOIN chosen AS c ON c.pairing = b.pairing AND c.problem_id = b.problem_id
JOIN stg_problems AS s ON s.problem_id = b.problem_id
JOIN texts AS ct ON ct.path_id = c.path_id
JOIN texts AS rt ON rt.path_id = b.rejected_path_id
WHERE s.split = 'train'
ORDER BY b.pairing, b.problem_id
