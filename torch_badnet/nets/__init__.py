"""Networks: BadNet, GoodNet, model files and checkpoints, input scale, the one inference path (tensors -> labels)."""
