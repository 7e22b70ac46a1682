"""C2SP tlog-witness: the witness server (:mod:`.server`) and the client a log uses to ask it (:mod:`.client`)."""
