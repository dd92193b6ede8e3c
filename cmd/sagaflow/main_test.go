package main

import (
	"testing"

	"github.com/sagaflow/sagaflow/internal/testenv"
)

// TestMain stops the PostgreSQL server the tests started.
func TestMain(m *testing.M) { testenv.Main(m) }
