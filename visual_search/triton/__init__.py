"""Serving on Triton, in one place: the model repository generator (repository.py) and the
python-backend models it packages (models/, pbmodel.py, names.py), the local tritonserver launcher
(server.py), the typed client (client.py), the benchmark and the `vsearch triton` CLI."""
