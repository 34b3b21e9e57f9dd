"""Studies of the product: many training runs through the CLIs (`runs`), the reproduction of the
sources' results (`reproduce`, `reproduction_report`) and the pre-registered equivalence study
(`equivalence`), with their statistics and the generated Markdown tables. The core (`cnn_parity`)
never imports this package."""
