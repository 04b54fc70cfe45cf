"""TrainerService: DreamBooth jobs, worker processes, checkpoints."""
