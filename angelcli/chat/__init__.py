"""`angel chat`: conversation state (session.py), transcripts (transcript.py), slash commands (slash.py) and
the prompt-toolkit terminal loop plus the non-interactive runner (repl.py).

Nothing here imports torch at module level; the engine arrives through an already opened Runtime.
"""

from angelcli.chat.session import ChatSession, Chunk, Message, ThinkSplitter, TurnStats, attach_draft

__all__ = ["ChatSession", "Chunk", "Message", "ThinkSplitter", "TurnStats", "attach_draft"]
