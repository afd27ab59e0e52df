"""`cnitrace trace`: one packet's path through the node, hop by hop, with the verdict and the policy behind it."""
