"""Drawings of computed results.

- :mod:`spectral_forensics.plots.bode`: matplotlib figures of a Bode analysis (per-head Bode
  plots, per-layer grids) and parallel PNG export.
- :mod:`spectral_forensics.plots.interactive`: one self-contained plotly HTML page with every
  analysed head.
- :mod:`spectral_forensics.plots.audit`: matplotlib figures of the RoPE placement audit.

The modules only draw arrays stored in the result objects of :mod:`spectral_forensics.results`.
The closed-form curves they overlay come from :mod:`spectral_forensics.spectral.transfer`. This
package imports none of its modules itself, so importing one does not import the other plotting
library.
"""
