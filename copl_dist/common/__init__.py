"""Small helpers every layer may use: errors, atomic writes, interrupts, seeding, argument types. Imports nothing from copl_dist."""
