-- One row per root -> terminal path of every search tree (SPEC section 2): the node ids in
-- order, the response text (the tagged thoughts concatenated), whether its answer is
-- correct or missing, its depth, and its length in student-tokenizer tokens and characters.
-- node_idx: the same ids as integers within the tree; cum_tokens / cum_chars: the running
-- length after each node. Both serve common-prefix computations.
WITH RECURSIVE nodes AS (
    SELECT n.tree_id, n.problem_id, n.node_id, n.parent_id, n.node_type, n.text,
           n.is_terminal, n.reward, n.no_answer,
           coalesce(l.student_tokens, n.n_tokens) AS tokens,
           CAST(split_part(n.node_id, '/', -1) AS INTEGER) AS idx
    FROM search_trees AS n
    LEFT JOIN node_lengths AS l ON l.node_id = n.node_id
),
walk AS (
    SELECT tree_id, node_id, [node_id] AS node_ids, [idx] AS node_idx, [0] AS cum_tokens, [0] AS cum_chars,
           text AS path_text
    FROM nodes
    WHERE parent_id IS NULL
    UNION ALL
    SELECT c.tree_id, c.node_id,
           list_append(w.node_ids, c.node_id),
           list_append(w.node_idx, c.idx),
           list_append(w.cum_tokens, w.cum_tokens[-1] + c.tokens),
           list_append(w.cum_chars, w.cum_chars[-1] + length(c.text)),
           w.path_text || c.text
    FROM walk AS w
    JOIN nodes AS c ON c.parent_id = w.node_id
)
SELECT
    t.problem_id,
    w.tree_id,
    w.node_id AS path_id,
    w.node_ids,
    w.node_idx,
    w.path_text,
    (t.node_type = 'answer' AND t.reward = 1.0) AS correct,
    coalesce(t.no_answer, false) AS no_answer,
    len(w.node_ids) - 1 AS depth,
    w.cum_tokens[-1] AS tokens,
    w.cum_chars[-1] AS chars,
    w.cum_tokens,
    w.cum_chars
FROM walk AS w
JOIN nodes AS t ON t.node_id = w.node_id
WHERE t.is_terminal
ORDER BY w.node_id
