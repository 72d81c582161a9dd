"""Parent selection: filters, the evaluator, abnormal-parent detection and the scheduling decision."""
