"""Server-rendered pages of conversations: the consultant's review queue and conversations
(`queue`, `team`) and the client's chat (`chat`)."""
