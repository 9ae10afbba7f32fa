"""Joint 2D/3D clustering bundle: networks, objectives, data transforms and the staged pre-training runner."""
