"""HTTP contracts. Each one is a protocol (schemas), a service (logic on ``Core``) and a thin router."""
