"""`angel serve`: an OpenAI-compatible server on angel's engine (app, scheduler, protocol, output, metrics,
run) and the hand-off of a checkpoint to SGLang / vLLM (handoff)."""
