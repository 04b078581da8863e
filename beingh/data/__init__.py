"""Data side: LeRobot reader -> embodiment config -> normalize -> sample -> pack. Never imports `beingh.model`."""
