// Package schemas holds the JSON Schemas of Sagaflow's messages, one
// directory per schema and one file per version (order-command/v1.json),
// embedded so that the binary carries its own contract. Every schema has
// a closed content model (additionalProperties false), so adding an
// optional field is a compatible change. Package contract reads them.
package schemas

import "embed"

// FS holds every schema as NAME/vN.json.
//
//go:embed */*.json
var FS embed.FS
