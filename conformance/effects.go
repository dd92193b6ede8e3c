package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

// OurEffects are the effect queries of Sagaflow's own participants: the
// live reservation, charge or shipment of a saga.
var OurEffects = map[string]string{
	"inventory": `SELECT count(*) FROM inventory.reservations WHERE saga_id = $1 AND released_at IS NULL`,
	"payment":   `SELECT count(*) FROM payment.charges WHERE saga_id = $1 AND refunded_at IS NULL`,
	"shipping":  `SELECT count(*) FROM shipping.shipments WHERE saga_id = $1 AND cancelled_at IS NULL`,
}

// SQLEffects observes effects with query, which takes the saga id as $1
// and returns one count.
func SQLEffects(pool *pgxpool.Pool, query string) Effects {
	return func(ctx context.Context, id uuid.UUID) (int, error) {
		var n int
		if err := pool.QueryRow(ctx, query, id).Scan(&n); err != nil {
			return 0, fmt.Errorf("effects query for saga %s: %w", id, err)
		}
		return n, nil
	}
}

// HTTPEffects observes effects at endpoint: GET endpoint?saga_id=ID
// answers a count, as a bare number or as {"effects": N}.
func HTTPEffects(endpoint string) Effects {
	return func(ctx context.Context, id uuid.UUID) (int, error) {
		sep := "?"
		if strings.Contains(endpoint, "?") {
			sep = "&"
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+sep+"saga_id="+url.QueryEscape(id.String()), nil)
		if err != nil {
			return 0, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, fmt.Errorf("effects of saga %s: %w", id, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("effects of saga %s: %s", id, resp.Status)
		}
		var v json.RawMessage
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			return 0, fmt.Errorf("effects of saga %s: %w", id, err)
		}
		if n, err := strconv.Atoi(strings.TrimSpace(string(v))); err == nil {
			return n, nil
		}
		var obj struct {
			Effects *int `json:"effects"`
		}
		if err := json.Unmarshal(v, &obj); err != nil || obj.Effects == nil {
			return 0, fmt.Errorf("effects of saga %s: answer %s is neither a number nor {\"effects\": N}", id, v)
		}
		return *obj.Effects, nil
	}
}
