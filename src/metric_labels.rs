//! Enums used as Prometheus label values. Each subsystem declares its own (next to the code that
//! counts them) with [`label_values!`]; this leaf module only holds the macro, so that declaring a
//! label does not tie a subsystem to the registry that composes every subsystem's metrics.

/// Declares an enum used as a label value, rendered in Prometheus' snake_case, with `ALL` listing
/// every value (series are created up front so rates and alerts work before the first event).
macro_rules! label_values {
    ($(#[$meta:meta])* $vis:vis $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* #[doc = concat!("Label value `", $text, "`.")] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            #[allow(dead_code)]
            $vis const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The label value as exported.
            #[allow(dead_code)]
            $vis fn as_label(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>) -> std::fmt::Result {
                std::fmt::Write::write_str(encoder, self.as_label())
            }
        }
    };
}

pub(crate) use label_values;
