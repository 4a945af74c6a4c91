-- One row per root -> terminal path of every search tree (SPEC section 2): the node ids in
-- order, the response text (the tagged thoughts concatenated), whether its answer is
-- correct or missing, its depth, and its length in student-tokenizer tokens and characters.
-- node_idx: the same ids as integers within the tree; cum_tokens / cum_chars: the running
-- length after each node. Both serve common-prefix computations.
-- batch_by: problem_id
WITH RECURSIVE nodes AS (
    SELECT n.tree_id, n.problem_id, n.node_id, n.parent_id, n.node_type, n.text,
           n.is_terminal, n.reward, n.no_answer,
           CAST(coalesce(l.student_tokens, n.n_tokens) AS INTEGER) AS tokens,
           CAST(length(n.text) AS INTEGER) AS chars,
           CAST(split_part(n.node_id, '/', -1) AS INTEGER) AS idx
    FROM search_trees AS n
    LEFT JOIN node_lengths AS l ON l.node_id = n.node_id
),
walk AS (
    -- running sums and the terminal's fields ride along, so nothing joins back afterwards
    SELECT problem_id, tree_id, node_id, [node_id] AS node_ids, [idx] AS node_idx, [0] AS cum_tokens, [0] AS cum_chars,
           text AS path_text, 0 AS tokens, 0 AS chars, is_terminal, node_type, reward, no_answer
    FROM nodes
    WHERE parent_id IS NULL
    UNION ALL
    SELECT c.problem_id, c.tree_id, c.node_id,
           list_append(w.node_ids, c.node_id),
           list_append(w.node_idx, c.idx),
           list_append(w.cum_tokens, w.tokens + c.tokens),
           list_append(w.cum_chars, w.chars + c.chars),
           w.path_text || c.text, w.tokens + c.tokens, w.chars + c.chars, c.is_terminal, c.node_type, c.reward, c.no_answer
    FROM walk AS w
    JOIN nodes AS c ON c.parent_id = w.node_id
)
SELECT
    problem_id, tree_id, node_id AS path_id, node_ids, node_idx, path_text,
    (node_type = 'answer' AND reward = 1.0) AS correct,
    coalesce(no_answer, false) AS no_answer,
    len(node_ids) - 1 AS depth, tokens, chars, cum_tokens, cum_chars
FROM walk
WHERE is_terminal
ORDER BY path_id
