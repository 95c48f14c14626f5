"""minisapo: reasoning-based generative recommendation with SAPO, small enough to read in one sitting."""

__version__ = "0.1.0"
