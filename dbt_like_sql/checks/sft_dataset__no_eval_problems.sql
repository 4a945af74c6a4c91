-- model: sft_dataset
-- blocking: true
-- No problem of the eval split reaches the SFT data.
SELECT problem_id FROM sft_dataset WHERE problem_id IN (SELECT problem_id FROM stg_problems WHERE split = 'eval')
