"""Importance of every prunable unit and of every layer (Minitron, Minitron-SSM, Nemotron Nano 2)."""
