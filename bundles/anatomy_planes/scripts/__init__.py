"""Method code of the anatomy-oriented imaging-plane bundle (Zhang et al., MedIA 2024)."""
