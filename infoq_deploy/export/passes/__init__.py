"""Graph rewrites applied to an exported file, one pass per module (qonnx's style: a
`Transformation` with one `apply`), so that each flow that consumes the file takes it unedited."""
