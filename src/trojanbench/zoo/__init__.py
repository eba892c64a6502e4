"""Model zoos: the model store (one folder per model), and later plans and executors."""
