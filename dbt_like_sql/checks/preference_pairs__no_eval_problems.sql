-- model: preference_pairs
-- blocking: true
-- No problem of the eval split reaches the preference pairs.
SELECT problem_id FROM preference_pairs WHERE problem_id IN (SELECT problem_id FROM stg_problems WHERE split = 'eval')
