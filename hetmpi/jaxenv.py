"""JAX settings hetmpi relies on, applied once before JAX computes anything.

Importing this module enables float64. Environment that must exist before JAX is first
imported (thread limits, host device count) is set by ``hetmpi.runtime`` instead.
"""

import jax

jax.config.update("jax_enable_x64", True)
