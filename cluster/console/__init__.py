"""The web console (cluster/console/app.py): server-rendered pages over the rooms, mounted by cluster.app."""
