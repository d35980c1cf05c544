"""The sans-I/O core of cauldron's wire protocol.

Nothing here imports twisted or zmq: messages are plain immutable values,
the codec turns them into multipart frames and back, and the lease table is
the router's state driven by the time passed in.
"""
