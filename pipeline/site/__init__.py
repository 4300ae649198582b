"""The site: what runs inside a hospital's boundary, beside its extract.

- :mod:`~pipeline.site.actor`: the site actor, the site's composition root (one Ray actor
  per hospital);
- :mod:`~pipeline.site.boundary`: the one place a strategy's request passes the site's
  policy, is audited and lets a value out;
- :mod:`~pipeline.site.rows`: reading and splitting the extract;
- :mod:`~pipeline.site.scoring`: evaluation of recorded models and drift, on the site's
  terms;
- :mod:`~pipeline.site.policy` and :mod:`~pipeline.site.audit`: the site's own rules and
  its audit log; :mod:`~pipeline.site.pins`, :mod:`~pipeline.site.months` and
  :mod:`~pipeline.site.trained_models`: the keys, months and models it has on record.
"""
