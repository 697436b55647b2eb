"""What both HTTP servers (rank 0's control API in :mod:`forgather_control.callback.server`
and the web page in :mod:`forgather_control.ui`) share: the server thread, the connection
guard, the Host and body rules. Below both, above :mod:`forgather_control.core`.

Imports uvicorn (the servers need it); nothing here is imported by the CLI's control
commands or by a rank that serves no HTTP.
"""
