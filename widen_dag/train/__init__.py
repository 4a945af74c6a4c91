"""Training: the tiny bootstrap models, SFT and fine-grained DPO on TRL (torch imported lazily
where it can be: ``preference`` needs neither TRL nor torch)."""
