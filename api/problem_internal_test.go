package api

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// A value the database refuses (SQLSTATE class 22, data exception) is the
// client's mistake that validation missed: 422, not "the server hit a bug".
func TestStoreErrorDataException(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code   string
		status int
	}{
		{"22021", http.StatusUnprocessableEntity}, // invalid byte sequence (a NUL in text)
		{"22003", http.StatusUnprocessableEntity}, // numeric value out of range
		{"23505", http.StatusInternalServerError}, // unique violation: a bug here
		{"40001", http.StatusServiceUnavailable},  // serialization failure: retry
	} {
		err := fmt.Errorf("insert order: %w", &pgconn.PgError{Code: tc.code, Message: "refused"})
		if p := storeError(err); p.Status != tc.status {
			t.Errorf("SQLSTATE %s: %d, want %d", tc.code, p.Status, tc.status)
		}
	}
}
