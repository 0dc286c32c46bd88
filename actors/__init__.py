"""Ray actors: thin shells that build their state from Settings and call into wtb_ray."""
