package api

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"strings"

	"github.com/sagaflow/sagaflow/order"
)

// StockLevel is one SKU's stock (GET /stock, PUT /stock/{sku}).
type StockLevel struct {
	SKU string `json:"sku"`
	// Available can be reserved; Held is held by reservations.
	Available int `json:"available"`
	Held      int `json:"held"`
}

// StockList is the answer to GET /stock: SKUs in order; Next is the
// after= of the next page, absent on the last.
type StockList struct {
	Stock []StockLevel `json:"stock"`
	Next  string       `json:"next,omitempty"`
}

// StockRequest is the body of PUT /stock/{sku}.
type StockRequest struct {
	// Available is the SKU's new available units (0 to 2147483647).
	Available *int `json:"available"`
}

// Stock reads and sets the inventory's stock (the inventory participant's
// table; the composition root adapts it).
type Stock interface {
	List(ctx context.Context, after string, limit int) ([]StockLevel, error)
	Set(ctx context.Context, sku string, available int) (StockLevel, error)
}

// stock is the Stock, or a 503 when the API has none.
func (s *server) stock() (Stock, error) {
	if s.cfg.Stock == nil {
		return nil, &Problem{Type: TypeUnavailable, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
			Detail: "this API serves no stock (no inventory configured)"}
	}
	return s.cfg.Stock, nil
}

// listStock is GET /stock.
func (s *server) listStock(w http.ResponseWriter, r *http.Request) error {
	st, err := s.stock()
	if err != nil {
		return err
	}
	q := r.URL.Query()
	for name, vs := range q {
		if name != "after" && name != "limit" {
			return badRequest(name, "is not a known query parameter (after, limit)", fmt.Sprintf("unknown query parameter %q; GET /stock takes after and limit", name))
		}
		if len(vs) > 1 {
			return badRequest(name, "must be given once", fmt.Sprintf("query parameter %s is given %d times", name, len(vs)))
		}
	}
	limit, err := listLimit(q)
	if err != nil {
		return err
	}
	levels, err := st.List(r.Context(), q.Get("after"), limit+1)
	if err != nil {
		return storeError(err)
	}
	out := StockList{Stock: levels}
	if len(levels) > limit {
		out.Stock = levels[:limit]
		out.Next = levels[limit-1].SKU
	}
	if out.Stock == nil {
		out.Stock = []StockLevel{}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// setStock is PUT /stock/{sku}.
func (s *server) setStock(w http.ResponseWriter, r *http.Request) error {
	st, err := s.stock()
	if err != nil {
		return err
	}
	sku := r.PathValue("sku")
	if strings.TrimSpace(sku) == "" || len(sku) > 200 {
		return badRequest("sku", "must be 1 to 200 characters", fmt.Sprintf("SKU %q is not valid", sku))
	}
	var req StockRequest
	if err := s.decodeJSON(w, r, &req, reflect.TypeFor[StockRequest]()); err != nil {
		return err
	}
	if req.Available == nil || *req.Available < 0 || *req.Available > 1<<31-1 {
		return &Problem{Type: TypeValidation, Title: "Unprocessable Content", Status: http.StatusUnprocessableEntity,
			Detail: "available must be a whole number from 0 to 2147483647",
			Errors: []order.FieldError{{Field: "available", Reason: "must be a whole number from 0 to 2147483647"}}}
	}
	level, err := st.Set(r.Context(), sku, *req.Available)
	if err != nil {
		return storeError(err)
	}
	s.log.Info("operator action", "action", "set stock", "operator", operatorName(r.Context()), "sku", sku, "available", level.Available)
	writeJSON(w, http.StatusOK, level)
	return nil
}
