"""`angel chat`: conversation state (session.py), <think> splitting (think.py), transcripts (transcript.py),
slash commands (slash.py), and the prompt-toolkit loop plus the piped-input runner (repl.py).

session.py pulls in the engine's sampling module (torch), so angelcli/commands/chat.py imports this package
inside its function: `angel --help` stays free of torch.
"""

from angelcli.chat.session import ChatSession, Message, TurnStats, attach_draft
from angelcli.chat.think import Chunk, ThinkSplitter

__all__ = ["ChatSession", "Chunk", "Message", "ThinkSplitter", "TurnStats", "attach_draft"]
