"""Ray Serve (installed as ``squad.serve``): the squad as a dynamic deployment graph."""
