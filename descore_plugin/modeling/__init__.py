"""The DeScore reward model: the judge prompt and its answer parser, the model, scoring."""
