"""What a stage is, independent of transport and storage: messages, the stage protocol with
its side-effect steps, the failure policy and the item states."""
