"""Small built-in example models with committed weights, used as the toolkit's default input."""
