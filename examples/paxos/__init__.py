"""A replicated key-value store on Paxos: event-sourced process applications reach consensus."""
