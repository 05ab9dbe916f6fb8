"""Training: data construction (D_op, D_back, loss masks), masked-loss SFT, expert iteration."""
