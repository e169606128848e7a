"""Post-training of Wan-2.1 through diffusers with a DeScore reward: the method protocol and registry
(`post_training`), one file per method (`flow_dpo`, `grpo`, `nft`), Wan glue (`wan`), and adapters for other
frameworks' loops (`adapters`, `flow_grpo`)."""
