"""What crosses a site's boundary, and how: the allow-listed reply types, the secure sum
that masks a site's vector, the site's long-lived identity, and the per-job certificates
of the XGBoost collective's channel. Nothing here knows a strategy or reads a row."""
